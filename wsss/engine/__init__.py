"""Pieces every training stage shares: processes, checkpoints, schedules."""
