"""Small helpers that really are shared: logging, seeding, CLI error handling."""

from magicbokeh.utils.logging import get_logger
from magicbokeh.utils.seeding import sample_generator, seed_everything

__all__ = ["get_logger", "sample_generator", "seed_everything"]
