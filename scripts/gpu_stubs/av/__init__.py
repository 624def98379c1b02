"""Placeholder for PyAV on the GPU benchmark machine (scripts/gpu_bundle.py; never on a ComfyUI host).

ComfyUI's API package imports PyAV at import time for video inputs and outputs, which benchmarks/gpu.py never
uses; PyAV's wheel (35 MB with FFmpeg) would not fit the machine's 64 MiB transfer. Any real use fails loudly.
A real PyAV earlier on the path always wins: this folder is last on PYTHONPATH.
"""


class _Absent:
    """Any attribute, call or type expression on PyAV: fine to name, an error to use."""

    def __getattr__(self, name):
        return _Absent()

    def __call__(self, *args, **kwargs):
        raise RuntimeError("PyAV is not installed on this machine (GPU benchmark bundle placeholder)")

    def __mro_entries__(self, bases):
        return (object,)

    def __or__(self, other):
        return self

    __ror__ = __or__


def __getattr__(name):
    return _Absent()
