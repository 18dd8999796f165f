"""The cluster as Kubernetes would see it: the API-server emulation, the endpoint controller,
pods made through the CNI plugin as a kubelet makes them."""
