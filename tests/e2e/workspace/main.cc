// Prints the greeting and the number of lines in the file named by argv[1] (0 without one).
#include <fstream>
#include <iostream>
#include <string>

#include "greet.h"

int main(int argc, char** argv) {
  int lines = 0;
  if (argc > 1) {
    std::ifstream in(argv[1]);
    if (!in) {
      std::cerr << "cannot open " << argv[1] << "\n";
      return 1;
    }
    for (std::string line; std::getline(in, line);) ++lines;
  }
  std::cout << Greet(lines) << "\n";
  return 0;
}
