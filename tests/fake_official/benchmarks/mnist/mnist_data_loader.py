"""STAND-IN for the official MNIST data loader: NOT the official code (see the README).

Uses torchvision at import time, so that importing the driver needs torchvision or the
adapter's stand-in modules (§9.1).
"""
from torchvision import datasets, transforms

MNIST_TRANSFORM = transforms.Compose([transforms.ToTensor()])


def get_mnist_loaders(root, batch_size):
    return datasets.MNIST(root, train=True, transform=MNIST_TRANSFORM)
