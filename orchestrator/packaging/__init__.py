"""What ships a plan elsewhere: offline bundles and Kubernetes manifests."""
