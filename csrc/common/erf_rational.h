// erf(x) without a library call, so that a loop over it vectorises (a call to erff per element
// made the int8 conv's GELU epilogue 24x slower than its ReLU one).
//
// x is clamped to [-4.5, 4.5] (|erf| there is within 2e-10 of 1), then erf(x) = x P(x^2) / Q(x^2)
// with P of degree 6 and Q of degree 5 in x^2: a rational fit made for phasor (weighted least
// squares on erf(x) / x over [0, 4.5], reweighted towards the minimax fit). Evaluated in double,
// its largest absolute error is 7.6e-9, below float32's rounding of erf near 1 (6e-8); Q >= 1.
#pragma once

namespace phasor {

inline double erf_rational(double x) {
  x = x < -4.5 ? -4.5 : (x > 4.5 ? 4.5 : x);  // (a NaN passes through)
  const double t = x * x;
  const double p =
      (((((-1.345890362211818e-08 * t + 4.730811210642163e-06) * t + 3.8121639628029415e-04) * t +
         3.85459311991404e-03) * t + 5.435555999434785e-02) * t + 1.8522065241723562e-01) * t +
      1.1283791698805634;
  const double q =
      ((((6.353143913828327e-05 * t + 1.3106505982991422e-03) * t + 1.5478215601981692e-02) * t +
        1.139977477258904e-01) * t + 4.97480957572502e-01) * t + 1.0;
  return x * p / q;
}

}  // namespace phasor
