

def test_save_refuses_what_a_map_file_cannot_hold(written, models, tmp_path):
    path, _, _ = written["mlp"]
    nnx = models["nnx"]
    undecided = tf2flax.suggest_mapping(path, nnx.state(models["Unordered"](rngs=nnx.Rngs(0))))
    with pytest.raises(MappingError, match="alpha"):
        undecided.save(tmp_path / "map.yaml")
    model = models["MLP"]([8, 16, 16, 16, 4], rngs=nnx.Rngs(0))
    with_fn = tf2flax.suggest_mapping(path, nnx.state(model), transforms={"layers/0/bias": lambda b: b})
    with pytest.raises(MappingError, match="cannot hold"):
        with_fn.save(tmp_path / "map.yaml")
    assert not (tmp_path / "map.yaml").exists()
