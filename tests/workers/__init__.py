"""Scripts that tests/test_distributed.py starts under torch.distributed.run (gloo, CPU), and their lifecycle."""
