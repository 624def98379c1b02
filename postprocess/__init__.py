"""Postprocess flow refiner (Zhao & Schwing 2025): model, training, ODE and nearest-neighbour search.

No ComfyUI imports: everything takes and returns tensors. nodes/flow_refiner.py is the ComfyUI side,
cli/train_refiner.py the command line.
"""
