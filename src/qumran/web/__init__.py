"""The web manager (the virt-manager and virt-viewer roles), served by qumrand on TCP."""
