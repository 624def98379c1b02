"""Postprocess flow refiner: model, training and nearest-neighbour search. No ComfyUI imports."""
