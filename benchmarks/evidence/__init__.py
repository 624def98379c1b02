"""Evidence harness: data, trained models and metrics that show whether guidance helps.

Host-free modules (`fractal`, `mnist_data`, `metrics`, `networks`) are plain torch; `comfy_models`
wraps the trained denoisers as ComfyUI ModelPatchers so benchmarks sample through `comfy.sample`.
"""
