"""The shared ``datasets`` builder: teacher rationales -> the stage configs of one data set.

A builder is a ``datasets.ArrowBasedBuilder`` (the shape of the packaged parquet/json builders):
``_info`` declares the typed :data:`tinythinker.data.records.FEATURES`, ``_split_generators`` lists
the splits of the variant, ``_generate_tables`` yields each split as one Arrow table made by
:func:`tinythinker.data.records.build_split`. Its configs are ``{dataset}-{variant}``.

The inputs (questions with their splits, selected rationales) are computed once per build and
handed to each config's builder, so parsing and selection do not run once per config::

    builder = CsqaBuilder(questions=qs, selection=sel, config_name="csqa-full", cache_dir=tmp)
    builder.download_and_prepare(output_dir=tmp / "csqa-full", file_format="parquet")

``tinythinker build`` (``tinythinker/data/build.py``) does this for every variant and lays the
parquet files out like a Hub dataset repo.
"""

from __future__ import annotations

import datasets

from tinythinker.protocol import VARIANTS, config_name
from tinythinker.data.records import FEATURES, describe_variant, iter_split, variant_splits
from tinythinker.data.sources import QuestionSet, get_spec
from tinythinker.data.teacher.select import Selection

CITATION = """@inproceedings{piao-park-2025-tinythinker,
  title = {TinyThinker: Distilling Reasoning through Coarse-to-Fine Knowledge Internalization with Self-Reflection},
  author = {Piao, Shengmin and Park, Sanghyun},
  booktitle = {Proceedings of NAACL 2025},
  year = {2025},
  eprint = {2412.08024},
  archivePrefix = {arXiv}
}"""


class StageConfig(datasets.BuilderConfig):
    """One variant (ablation) of a data set's stage records."""

    def __init__(self, *, variant: str, **kwargs):
        super().__init__(**kwargs)
        self.variant = variant


class TinyThinkerBuilder(datasets.ArrowBasedBuilder):
    """Base builder; subclasses set ``DATASET`` and get one config per variant."""

    DATASET = ""
    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = StageConfig
    # Parquet row groups of 10k records (~10 MB of text): faster to write and smaller than datasets'
    # default of 1k, still small enough for the Hub's dataset viewer.
    DEFAULT_WRITER_BATCH_SIZE = 10_000

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.BUILDER_CONFIGS = [
            StageConfig(
                name=config_name(cls.DATASET, variant),
                version=cls.VERSION,
                variant=variant,
                description=describe_variant(cls.DATASET, variant),
            )
            for variant in VARIANTS
        ]
        cls.DEFAULT_CONFIG_NAME = config_name(cls.DATASET, "full")

    def __init__(self, *, questions: QuestionSet, selection: Selection, reference_order: bool = False, **kwargs):
        if questions.dataset != self.DATASET or selection.dataset != self.DATASET:
            raise ValueError(f"{type(self).__name__} builds {self.DATASET}, got questions of {questions.dataset}")
        self.questions = questions
        self.selection = selection
        self.reference_order = reference_order
        super().__init__(**kwargs)

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=(
                f"TinyThinker coarse-to-fine rationale records (Recall -> Analyze -> Summarize) for {self.DATASET}, "
                "made from teacher responses by the tinythinker package."
            ),
            features=FEATURES,
            homepage="https://arxiv.org/abs/2412.08024",
            citation=CITATION,
            license=get_spec(self.DATASET).license,
        )

    def _split_generators(self, dl_manager):
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"split": split})
            for split in variant_splits(self.config.variant)
        ]

    def _generate_tables(self, split: str):
        tables = iter_split(self.questions, self.selection, self.config.variant, split, reference_order=self.reference_order)
        for index, table in enumerate(tables):
            yield index, table


# One plain subclass per data set; ``dataset_builders`` re-exports them (the library never imports it).
class CsqaBuilder(TinyThinkerBuilder):
    DATASET = "csqa"


class ObqaBuilder(TinyThinkerBuilder):
    DATASET = "obqa"


class StrategyqaBuilder(TinyThinkerBuilder):
    DATASET = "strategyqa"


BUILDERS: dict[str, type[TinyThinkerBuilder]] = {b.DATASET: b for b in (CsqaBuilder, ObqaBuilder, StrategyqaBuilder)}


def builder_class(dataset: str) -> type[TinyThinkerBuilder]:
    """The builder of one data set (:data:`BUILDERS`)."""
    get_spec(dataset)  # an unknown data set is a clear error
    return BUILDERS[dataset]
