"""fedcustom: federated customization of large models (prefix-tuning, LoRA, prompts, full
fine-tuning, distillation, black-box prompts, RAG) in one harness. See docs/architecture.md.

Kept free of imports: Flower's ClientApp processes import this package first and must not pay
for torch.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fedcustom")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"
