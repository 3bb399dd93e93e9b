"""Population-based training of impala_tf runs (IMPALA, Appendix F). Work in progress: the
rule (`rule`) is built and tested; running members as Ray Tune trials is not yet."""
