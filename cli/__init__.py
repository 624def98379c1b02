"""Command-line and server-client code: the headless runner, compare grids, the refiner trainer, UI→API
conversion and ComfyUI in-process. None of it is imported by the nodes; none of it needs ComfyUI to import.

    python -m guidekit.cli.run WORKFLOW.json [--set NODE.INPUT=VALUE ...] [--out DIR]
    python -m guidekit.cli.compare [--methods cfg,pag,seg,...] [--checkpoint NAME ...]
    python -m guidekit.cli.train_refiner --generated DIR --real DIR --out FILE [...]
"""
