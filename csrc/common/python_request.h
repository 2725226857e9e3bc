// Builds a CountRequest from the plain integers and floats the Python backends pass (shared by both bindings).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "count_args.h"

namespace nepenthe {

inline View view_from(const std::vector<int64_t>& v, const char* name) {
  if (v.size() != 6) {
    throw std::invalid_argument(std::string(name) + " must be (outer, C, inner, s_outer, s_channel, s_inner)");
  }
  return View{v[0], v[1], v[2], v[3], v[4], v[5]};
}

inline CountRequest request_from(uintptr_t x, int dtype, const std::vector<int64_t>& view,
                                 const std::vector<double>& greater, const std::vector<double>& tie, bool ignore_ties,
                                 uintptr_t counts) {
  if (dtype < kFloat32 || dtype > kFloat64) throw std::invalid_argument("unknown dtype code");
  if (greater.empty() || greater.size() > static_cast<size_t>(kMaxThresholds) || tie.size() != greater.size()) {
    throw std::invalid_argument("need 1 to 7 thresholds and as many tie values");
  }
  CountRequest r{};
  r.x = reinterpret_cast<const void*>(x);
  r.dtype = dtype;
  r.view = view_from(view, "view");
  r.num_thresholds = static_cast<int>(greater.size());
  for (size_t k = 0; k < greater.size(); ++k) {
    r.greater[k] = greater[k];
    r.tie[k] = tie[k];
  }
  r.ignore_ties = ignore_ties;
  r.counts = reinterpret_cast<int64_t*>(counts);
  r.y = nullptr;
  r.y_view = r.view;
  r.activation = {kNone, 0.0, 0.0};
  r.threads = 1;
  r.stream = 0;
  return r;
}

inline void set_fused(CountRequest& r, uintptr_t y, const std::vector<int64_t>& y_view, int kind, double p0,
                      double p1) {
  if (kind < kRelu || kind > kGeluTanh) throw std::invalid_argument("unknown activation code");
  r.y = reinterpret_cast<void*>(y);
  r.y_view = view_from(y_view, "y_view");
  r.activation = {kind, p0, p1};
}

}  // namespace nepenthe
