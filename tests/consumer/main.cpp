// Runs one attention call through the installed attend package and checks one number.
#include <attend/attend.h>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  // Two keys, one query: q = (1, 0), k = (1, 0), (0, 1), v = (1, 2), (3, 4), scale 1.
  std::vector<float> q = {1, 0}, k = {1, 0, 0, 1}, v = {1, 2, 3, 4}, out(2);
  attend::attention_params p;
  p.q = attend::tensor_view::contiguous(q.data(), attend::dtype::f32, {1, 1, 1, 2});
  p.k = attend::tensor_view::contiguous(k.data(), attend::dtype::f32, {1, 2, 1, 2});
  p.v = attend::tensor_view::contiguous(v.data(), attend::dtype::f32, {1, 2, 1, 2});
  p.out = attend::tensor_view::contiguous(out.data(), attend::dtype::f32, {1, 1, 1, 2});
  p.maybe_scale = 1.0;
  const std::string ran = attend::attention(p);
  const double e = std::exp(1.0);
  const double want = (e * 1 + 3) / (e + 1);
  std::printf("attend %s: backend %s, out[0] = %.6f (want %.6f)\n", std::string(attend::version()).c_str(), ran.c_str(),
              out[0], want);
  return std::abs(out[0] - want) < 1e-5 ? 0 : 1;
}
