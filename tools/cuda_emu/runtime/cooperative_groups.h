// cuda_emu shadow of cooperative_groups.h: the cluster API lives in cuda_emu_api.h.
#pragma once
#include "cuda_emu.h"
