#include "greet.h"

#include "greeting.h"

std::string Greet(int lines) {
  return std::string(GREETING) + ", " + std::to_string(lines) + " lines";
}
