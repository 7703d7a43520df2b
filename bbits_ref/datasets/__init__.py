"""Datasets: the embedded MNIST subset, MNIST (IDX) and CIFAR-10 files, downloads and batching."""
