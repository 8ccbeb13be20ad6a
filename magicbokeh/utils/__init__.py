"""Small helpers that really are shared: logging, seeding, progress bars, CLI error handling, results files.

Nothing is imported here, so that an entry point can check its command line (:mod:`magicbokeh.utils.cli`) and
fail in a fraction of a second, before torch is loaded.
"""
