"""The nets: ResNets and plain nets (ImageNet and CIFAR), their blocks, stem and BatchNorm, the
convolutions' CPU lowerings, variable layouts and torchvision weights."""
