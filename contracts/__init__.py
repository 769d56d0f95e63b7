"""The formats every stage shares, each defined once: the record, the labels, the shard folder's
manifest, the run folder, the prediction and ensemble files, the export folder, the one
atomic-write helper and the one bad-input exception. Readers and writers both import them; nothing
here imports a stage (preprocess, pipeline, models, training, evaluation, serving)."""
