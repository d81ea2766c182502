"""Reverse-mode autodiff on the IR: per-op VJP rules and the BPTT transform of scans."""
