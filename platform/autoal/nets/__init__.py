"""The networks: the task models, their heads, and the pretrained backbones (torch)."""
