"""AutoAL's strategy search: SearchNet, its objective and the per-round search loop."""
