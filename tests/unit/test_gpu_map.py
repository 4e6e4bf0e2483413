from agent.gpu_map import nvml_indices

GPUS = [{"index": i, "uuid": f"GPU-{i}a{i}b-0000-1111-2222-33333333333{i}"} for i in range(4)]


def test_without_cuda_visible_devices_a_trial_sees_every_gpu_from_nvml_index_0():
    assert nvml_indices(GPUS, None) == [0, 1, 2, 3]


def test_indices_follow_cuda_visible_devices_in_its_order():
    assert nvml_indices(GPUS, "2,0") == [2, 0]
    assert nvml_indices(GPUS, " 3 ") == [3]


def test_uuids_and_unique_prefixes_name_their_gpu():
    assert nvml_indices(GPUS, f"{GPUS[1]['uuid']},GPU-3a3") == [1, 3]


def test_the_list_ends_where_cuda_would_stop_reading_it():
    assert nvml_indices(GPUS, "1,7,2") == [1]  # no GPU 7: CUDA ignores what follows
    assert nvml_indices(GPUS, "MIG-abc,1") is None  # a slice NVML cannot watch whole: unknown, not absent
    assert nvml_indices(GPUS, "GPU-,1") == []  # a prefix of every UUID names none
    assert nvml_indices(GPUS, "") == []  # CUDA_VISIBLE_DEVICES= hides every GPU
