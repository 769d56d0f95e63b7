"""Training: strategy and precision set-up (`distribute`), the run config (`config`), the distributed
step (`step`) and the epoch loop with resume and outputs (`loop.run_training`).

Kept free of imports so that `training.distribute` can be imported alone (predict.py does).
"""
