"""Reading the TFRecord shards: the record format, the manifest and the tf.data input pipelines."""
