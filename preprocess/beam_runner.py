"""The builder's work units on Apache Beam (`--runner=beam`): shard names → images → Reshuffle →
`units.process_item` → GroupByKey(shard) → `units.finish_unit`. Units travel as files under
.build/units/, not in the graph (Dataflow refuses graphs over 10 MB; NIH's plan is larger)."""

from __future__ import annotations

import dataclasses
import logging
import pickle
import shlex

import apache_beam as beam
from absl import logging as absl_logging
from apache_beam.options.pipeline_options import PipelineOptions

from contracts import storage
from contracts.atomic import write_bytes
from contracts.errors import UserInputError
from preprocess import units as units_lib
from preprocess.config import BuildConfig
from preprocess.plan import WorkUnit

UNITS_DIR = "units"  # inside units.STATE_DIR: one work unit per pending shard


def pipeline_options(args_text: str) -> PipelineOptions:
    """Beam's options from --beam_pipeline_args; UserInputError for bad quoting or unknown options."""
    try:
        args = shlex.split(args_text)
    except ValueError as err:
        raise UserInputError(f"--beam_pipeline_args={args_text!r}: {err}") from None
    options = PipelineOptions(args)
    # Beam drops unknown options with a warning only: refused here instead (its warning held back).
    beam_log = logging.getLogger(PipelineOptions.__module__)
    level = beam_log.level
    beam_log.setLevel(logging.ERROR)
    try:
        unknown = sorted(set(options.get_all_options(retain_unknown_options=True))
                         - set(options.get_all_options()))
    finally:
        beam_log.setLevel(level)
    if unknown:
        named = ", ".join("--" + u for u in unknown)
        raise UserInputError(f"--beam_pipeline_args: Beam knows no option {named}; "
                             "check the spelling against the runner's options "
                             "(beam.apache.org/documentation/runners)")
    return options


def _unit_path(output_dir: str, shard: str) -> str:
    return storage.join(output_dir, units_lib.STATE_DIR, UNITS_DIR, f"{shard}.pickle")


def _write_unit(output_dir: str, unit: WorkUnit, by_name: dict, boxes: dict) -> None:
    names = [item.name for item in unit.items]
    needed = (unit, {n: by_name[n] for n in names}, {n: boxes[n] for n in names if n in boxes})
    write_bytes(_unit_path(output_dir, unit.shard), pickle.dumps(needed))


def _read_unit(output_dir: str, shard: str) -> tuple[WorkUnit, dict, dict]:
    """(unit, image name -> Source, image name -> `ImageBoxes`)."""
    return pickle.loads(storage.read_bytes(_unit_path(output_dir, shard)))


def _images_of(shard: str, output_dir: str):
    """Yields (shard, (index in the shard, item, the unit's settings)) for each image of a unit."""
    unit, _, _ = _read_unit(output_dir, shard)
    settings = dataclasses.replace(unit, items=())  # what process_item needs, without 5,000 items
    for index, item in enumerate(unit.items):
        yield shard, (index, item, settings)


def _process(element):
    shard, (index, item, settings) = element
    return shard, (index, units_lib.process_item(item, settings))


def _write_shard(element, config: BuildConfig) -> None:
    shard, indexed_results = element
    unit, by_name, boxes = _read_unit(config.output_dir, shard)
    results = [result for _, result in sorted(indexed_results, key=lambda pair: pair[0])]
    if [r[0] for r in results] != [item.name for item in unit.items]:
        # A lost or repeated element would make a shard the plan does not describe: never write it.
        raise RuntimeError(f"shard {shard}: the pipeline delivered {len(results)} results for "
                           f"{len(unit.items)} planned images")
    units_lib.finish_unit(config, unit, results, by_name, boxes)


def run_units(config: BuildConfig, pending: list[WorkUnit], by_name: dict, boxes: dict) -> None:
    """Runs `pending` units on the Beam runner --beam_pipeline_args names; UserInputError for bad
    options or a failed pipeline (its last error line)."""
    options = pipeline_options(config.beam_pipeline_args)
    if not pending:
        return
    if absl_logging.get_verbosity() < absl_logging.DEBUG:
        # Beam narrates its start-up at INFO: shown under --verbosity=1, like TensorFlow's INFO lines.
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
    units_dir = storage.join(config.output_dir, units_lib.STATE_DIR, UNITS_DIR)
    storage.makedirs(units_dir)
    for unit in pending:
        _write_unit(config.output_dir, unit, by_name, boxes)
    pipeline = beam.Pipeline(options=options)
    _ = (pipeline
         | "Shards" >> beam.Create([unit.shard for unit in pending])
         | "Images" >> beam.FlatMap(_images_of, config.output_dir)
         | "Spread" >> beam.Reshuffle()
         | "Decode" >> beam.Map(_process)
         | "ByShard" >> beam.GroupByKey()
         | "Write" >> beam.Map(_write_shard, config))
    try:
        pipeline.run().wait_until_finish()
    except Exception as err:  # a worker's failure arrives as the runner's own exception
        report = str(err).strip() or type(err).__name__
        absl_logging.debug("the Beam pipeline failed:\n%s", report)
        raise UserInputError(f"the Beam pipeline failed: {report.splitlines()[-1]}; the shards it finished "
                             "are kept and the same command writes the rest (--verbosity=1 shows Beam's "
                             "whole report)") from None
    storage.rmtree(units_dir)
