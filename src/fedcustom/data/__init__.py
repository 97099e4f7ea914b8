"""Task data: built-in and user datasets, deterministic splits, client partitions."""

from fedcustom.data import generation  # noqa: F401 - registers the generation datasets
from fedcustom.data.datasets import TaskData, list_datasets, load_task_data
from fedcustom.data.partition import partition_indices, partition_table

__all__ = ["TaskData", "list_datasets", "load_task_data", "partition_indices", "partition_table"]
