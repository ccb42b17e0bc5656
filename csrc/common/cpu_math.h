// Math functions without library calls, branch-free, so that loops over them vectorise: a call to
// erff per element made the int8 conv's GELU epilogue 24x slower than its ReLU one, and atan2f
// per element doubled a cv-RNN run that saves its phases. Both are evaluated in double, for float
// results; their polynomials were fitted for phasor (weighted least squares, reweighted towards the
// minimax fit).
#pragma once

#include <cmath>

namespace phasor {

// erf: for |x| < 4.5, erf(x) = x P(x^2) / Q(x^2) with P of degree 6 and Q of degree 5 in x^2 (fitted
// to erf(x) / x over [0, 4.5]; Q >= 1), largest absolute error 7.6e-9, below float32's rounding of
// erf near 1 (6e-8); beyond, +-1 exactly (|erf| there is within 2e-10 of 1), so 1 + erf(x) and a
// GELU built on it are exactly 0 far in the negative tail. A NaN passes through.
inline double erf_rational(double x) {
  const double xc = x < -4.5 ? -4.5 : (x > 4.5 ? 4.5 : x);  // keeps the polynomial's input bounded
  const double t = xc * xc;
  const double p =
      (((((-1.345890362211818e-08 * t + 4.730811210642163e-06) * t + 3.8121639628029415e-04) * t +
         3.85459311991404e-03) * t + 5.435555999434785e-02) * t + 1.8522065241723562e-01) * t +
      1.1283791698805634;
  const double q =
      ((((6.353143913828327e-05 * t + 1.3106505982991422e-03) * t + 1.5478215601981692e-02) * t +
        1.139977477258904e-01) * t + 4.97480957572502e-01) * t + 1.0;
  return std::fabs(x) >= 4.5 ? std::copysign(1.0, x) : xc * p / q;
}

// atan2(y, x) in (-pi, pi], 0 where x = y = 0 (torch.angle's convention for zeros of either sign),
// NaN where x or y is not finite. Reduction: a = min(|x|, |y|) / max(|x|, |y|) in [0, 1]; above
// tan(pi/8), atan(a) = pi/4 + atan((a - 1) / (a + 1)); on [-tan(pi/8), tan(pi/8)],
// atan(b) = b + b^3 P(b^2) with P of degree 6 (absolute error 1.8e-13; the leading term exactly b,
// so small angles keep their relative accuracy); then the octant and the sign of y (so
// atan2(-0.0, x < 0) = -pi, as std::atan2). Rounded to float it is within 1 ulp of the correctly
// rounded atan2 and equal to it on all but ~2e-6 of random inputs (checked on 1.2e7 points).
inline double atan2_poly(double y, double x) {
  const double ax = std::fabs(x), ay = std::fabs(y);
  const double mx = ax > ay ? ax : ay, mn = ax > ay ? ay : ax;
  const double a = mx > 0 ? mn / mx : 0.0;
  const bool reduce = a > 0.41421356237309503;
  const double b = reduce ? (a - 1.0) / (a + 1.0) : a, t = b * b;
  const double p =
      (((((-3.697910512070813e-02 * t + 6.932306089223568e-02) * t - 8.982313419710308e-02) * t +
         1.1102212070162444e-01) * t - 1.4285309051222858e-01) * t + 1.9999990819224936e-01) * t -
      3.3333333257256054e-01;
  double r = (reduce ? 0.7853981633974483 : 0.0) + (b + b * t * p);
  r = ay > ax ? 1.5707963267948966 - r : r;
  r = x < 0 ? 3.141592653589793 - r : r;
  r = std::copysign(r, y);
  return (ax == 0 && ay == 0) ? 0.0 : r + 0.0 * (x + y);  // 0 * (x + y): NaN for NaN or inf inputs
}

}  // namespace phasor
