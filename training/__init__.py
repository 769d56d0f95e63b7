"""Training: the run config (`config`), the distributed step (`step`), the loop's state and
checkpoints (`state`) and the epoch loop with resume and outputs (`loop.run_training`)."""
