import pytest


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory):
    """A small synthetic VOC-layout dataset shared by the stage tests (64 px, 48 train, 16 val)."""
    from wsss.data.toy import make_toy

    root = tmp_path_factory.mktemp("toy") / "toy"
    make_toy(root, size=64, num_train=48, num_val=16, seed=0, workers=1, progress=False)
    return root
