#ifndef REDBARN_E2E_GREET_H_
#define REDBARN_E2E_GREET_H_

#include <string>

// Returns GREETING (from the generated greeting.h) followed by ", N lines".
std::string Greet(int lines);

#endif
