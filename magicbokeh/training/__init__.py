"""Training: train(cfg), the Trainer loop, phases, losses, optimizers, checkpoint/resume."""
