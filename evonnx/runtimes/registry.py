"""The runtime registry: :func:`make_runtime` builds the runtime a name or settings ask for.

The runtimes import their heavy dependencies (torch, trtexec) only when built, so naming one
costs nothing until it is used.
"""

from __future__ import annotations

from evonnx.runtimes.base import Runtime, RuntimeSettings


def make_runtime(settings: RuntimeSettings | str) -> Runtime:
    """The runtime ``settings`` names, checked to be usable here.

    Raises:
        ConfigError: Unknown name or bad settings.
        RuntimeUnavailableError: The runtime cannot run on this machine.
        ProviderError: An onnxruntime execution provider is missing from this build.
    """
    s = RuntimeSettings(settings) if isinstance(settings, str) else settings
    if s.name.startswith("ort-"):
        from evonnx.runtimes.ort import OrtRuntime

        return OrtRuntime(s)
    if s.name == "torch-cuda":
        from evonnx.runtimes.torch_cuda import TorchCudaRuntime

        return TorchCudaRuntime(s)
    from evonnx.runtimes.tensorrt import TrtexecRuntime

    return TrtexecRuntime(s)
