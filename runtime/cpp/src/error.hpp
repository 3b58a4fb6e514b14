// Internal exception carrying a C API status code; the C API turns it into status + message.
#pragma once

#include <stdexcept>
#include <string>

#include "fssam2/fssam2.h"

namespace fssam2::detail {

class Error : public std::runtime_error {
public:
    Error(fssam2_status status, const std::string &message) : std::runtime_error(message), status_(status) {}
    fssam2_status status() const { return status_; }

private:
    fssam2_status status_;
};

}  // namespace fssam2::detail
