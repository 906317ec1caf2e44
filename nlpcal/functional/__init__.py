"""Pure tensor maths: tensors in, tensors out. No modules, no trainer, no I/O."""
