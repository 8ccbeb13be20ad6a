"""Evaluation: metric registry, predict→score runner, baselines, reports and plots, speed benchmark."""
