// What `dashlm eval` and `dashlm calibrate` share: where the datasets are and the chat turn
// around a prompt.
#pragma once
#include <string>

#include "model/model.h"
#include "eval/eval.h"

namespace dashlm::cli {

// --dataset-dir when given; else ./.cache/datasets, else .cache/datasets beside the folder of the
// dashlm binary's folder (build/dashlm -> .cache/datasets of the checkout).
std::string find_dataset_dir(const std::string& given);

// Sample options for the model's chat format: mode "on" (error if the model has none), "off", or
// "auto" (on when the model file carries a chat template dashlm knows).
eval::SampleOptions chat_sample_options(const Model& model, const std::string& mode);

}  // namespace dashlm::cli
