"""Training: the loop and its captured CUDA-graph step, datasets and image folders, augmentation on
the device, checkpoints and resume, an imported teacher, TensorBoard curves."""
