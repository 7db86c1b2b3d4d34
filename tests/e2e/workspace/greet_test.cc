#include <cstdlib>
#include <iostream>

#include "greet.h"

int main() {
  const std::string got = Greet(2);
  if (got != "hello from redbarn, 2 lines") {
    std::cerr << "unexpected greeting: " << got << "\n";
    return EXIT_FAILURE;
  }
  std::cout << "PASS\n";
  return EXIT_SUCCESS;
}
