"""Command-line tools that measure the library rather than make it up (not part of its API):
`python -m impala_tf.tools.benchmark`, also installed as `impala-benchmark`."""
