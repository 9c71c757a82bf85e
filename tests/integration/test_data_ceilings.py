"""The demo generator keeps its promises: each modality alone reaches its stated ceiling and no further, all
three together reach best_achievable. Checked with plain per-modality features and logistic regression."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from kubefusion.config import DataConfig
from kubefusion.data import scan
from kubefusion.data.synth import synthesize

pytestmark = pytest.mark.slow


def stripe_direction(path: str) -> list[float]:
    """How much the image changes down vs across: the orientation, whatever the colours and phase."""
    grey = np.asarray(Image.open(path), dtype=np.float32).mean(axis=2)
    down, across = np.abs(np.diff(grey, axis=0)).mean(), np.abs(np.diff(grey, axis=1)).mean()
    return [np.log1p(down) - np.log1p(across)]


def features(records, vectorizer):
    image = np.array([stripe_direction(r.image_path) for r in records])
    text = vectorizer.transform([r.text for r in records]).toarray()
    numeric = np.nan_to_num(np.stack([r.numeric for r in records]))
    return {"image": image, "text": text, "numeric": numeric, "all": np.hstack([image, text, numeric])}


@pytest.fixture(scope="module")
def accuracies(tmp_path_factory):
    root = tmp_path_factory.mktemp("ceilings") / "demo"
    info = synthesize(root, samples=2000, seed=11, progress=False)
    records = scan(DataConfig(path=str(root)), root).records
    train, test = train_test_split(records, test_size=0.5, random_state=0, stratify=[r.label for r in records])
    vectorizer = CountVectorizer().fit([r.text for r in train])
    x_train, x_test = features(train, vectorizer), features(test, vectorizer)
    y_train, y_test = [r.label for r in train], [r.label for r in test]
    scores = {}
    for name in x_train:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x_train[name], y_train)
        scores[name] = model.score(x_test[name], y_test)
    return info, scores


@pytest.mark.parametrize("modality", ["image", "text", "numeric"])
def test_each_modality_alone_reaches_its_ceiling_and_no_further(accuracies, modality):
    info, scores = accuracies
    ceiling = info["ceilings"][modality]
    assert ceiling == pytest.approx(0.24625)
    # 1000 test records: one s.d. is ~1.4 points, and the classes' shares in this sample move the best guess too
    assert abs(scores[modality] - ceiling) < 0.05, scores
    assert scores[modality] < info["best_achievable"]["top1"] - 0.6


def test_all_three_together_reach_best_achievable(accuracies):
    info, scores = accuracies
    assert scores["all"] == pytest.approx(info["best_achievable"]["top1"], abs=0.025), scores
    print(json.dumps(scores))
