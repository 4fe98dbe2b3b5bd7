def get_tensor_model_parallel_rank():
    return 0

def get_tensor_model_parallel_world_size():
    return 1

def divide(a, b):
    return a // b
