"""Pure torch guidance math: tensors and floats in, tensors out. No ComfyUI imports (ARCHITECTURE.md: layers)."""
