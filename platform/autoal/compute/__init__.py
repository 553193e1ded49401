"""The compute layer, the only one that runs Ray: training (in the driver or on workers), the fused scoring pass, embedding."""
