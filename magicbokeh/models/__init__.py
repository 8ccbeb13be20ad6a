"""The MagicBokeh network: build, UNet surgery, LoRA, defocus ControlNet, FAMA, one-step forward, checkpoints."""
