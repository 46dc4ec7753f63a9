"""The control loop: measure, forecast, replan, apply, refine."""
