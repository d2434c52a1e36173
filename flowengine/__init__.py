"""flowengine: validation, translation to per-component configs and the flow lifecycle."""
