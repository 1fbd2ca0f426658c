"""StatQuest's "Introduction to coding neural networks with PyTorch and Lightning", run on ember.

The network, the data and the training code are the tutorial's own; the only
change to them is the import line (`import ember as L` instead of
`import lightning as L`). What this script adds around them: the plots are
written to PNG files instead of shown, and both learning-rate suggestions are
printed (ember's default, and Lightning's 'steepest' rule) so they can be
compared.

    python examples/statquest.py [--out DIR]
"""
import argparse
import os
import time

_t0 = time.perf_counter()

import torch  # torch will allow us to create tensors.
import torch.nn as nn  # torch.nn allows us to create a neural network.
import torch.nn.functional as F  # nn.functional give us access to the activation and loss functions.
from torch.optim import SGD  # optim contains many optimizers. Here, we're using SGD, stochastic gradient descent.

import ember as L  # the tutorial has: import lightning as L
from torch.utils.data import TensorDataset, DataLoader  # these are needed for the training data

import matplotlib

matplotlib.use("Agg")  # write files; no window needed
import matplotlib.pyplot as plt  ## matplotlib allows us to draw graphs.
import seaborn as sns  ## seaborn makes it easier to draw nice-looking graphs.

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"),
                    help="folder for the PNG plots (default: examples/out)")
args = parser.parse_args()
os.makedirs(args.out, exist_ok=True)


def save(name):
    path = os.path.join(args.out, name)
    plt.savefig(path, dpi=100, bbox_inches="tight")
    plt.close()
    print(f"wrote {path}")


## The training data: three doses and how effective each was.
inputs = torch.tensor([0., 0.5, 1.])
labels = torch.tensor([0., 1., 0.])


class BasicLightning(L.LightningModule):

    def __init__(self):  # __init__() is the class constructor function, and we use it to initialize the weights and biases.

        super().__init__()  # initialize an instance of the parent class, LightningModule.

        self.w00 = nn.Parameter(torch.tensor(1.7), requires_grad=False)
        self.b00 = nn.Parameter(torch.tensor(-0.85), requires_grad=False)
        self.w01 = nn.Parameter(torch.tensor(-40.8), requires_grad=False)

        self.w10 = nn.Parameter(torch.tensor(12.6), requires_grad=False)
        self.b10 = nn.Parameter(torch.tensor(0.0), requires_grad=False)
        self.w11 = nn.Parameter(torch.tensor(2.7), requires_grad=False)

        self.final_bias = nn.Parameter(torch.tensor(-16.), requires_grad=False)

    def forward(self, input):  # forward() takes an input value and runs it though the neural network

        input_to_top_relu = input * self.w00 + self.b00
        top_relu_output = F.relu(input_to_top_relu)
        scaled_top_relu_output = top_relu_output * self.w01

        input_to_bottom_relu = input * self.w10 + self.b10
        bottom_relu_output = F.relu(input_to_bottom_relu)
        scaled_bottom_relu_output = bottom_relu_output * self.w11

        input_to_final_relu = scaled_top_relu_output + scaled_bottom_relu_output + self.final_bias

        output = F.relu(input_to_final_relu)

        return output  # output is the predicted effectiveness for a drug dose.


## create the different doses we want to run through the neural network.
## torch.linspace() creates the sequence of numbers between, and including, 0 and 1.
input_doses = torch.linspace(start=0, end=1, steps=11)

model = BasicLightning()  # create the neural network.
output_values = model(input_doses)  # run the doses through the neural network.

sns.set(style="whitegrid")  # set the style for the graph.
sns.lineplot(x=input_doses, y=output_values, color='green', linewidth=2.5)  # the curve the network draws
sns.scatterplot(x=inputs, y=labels, color='black', s=80)  # the three training points
plt.ylabel('Effectiveness')
plt.xlabel('Dose')
save("1_pretrained_fit.png")


class BasicLightningTrain(L.LightningModule):

    def __init__(self):  # __init__ is the class constructor function, and we use it to initialize the weights and biases.

        super().__init__()  # initialize an instance of the parent class, LightningModule.

        self.w00 = nn.Parameter(torch.tensor(1.7), requires_grad=False)
        self.b00 = nn.Parameter(torch.tensor(-0.85), requires_grad=False)
        self.w01 = nn.Parameter(torch.tensor(-40.8), requires_grad=False)

        self.w10 = nn.Parameter(torch.tensor(12.6), requires_grad=False)
        self.b10 = nn.Parameter(torch.tensor(0.0), requires_grad=False)
        self.w11 = nn.Parameter(torch.tensor(2.7), requires_grad=False)

        ## We want to modify final_bias to demonstrate how to optimize it with backpropagation.
        ## The optimal value for final_bias is -16...
        # self.final_bias = nn.Parameter(torch.tensor(-16.), requires_grad=False)
        ## ...so we set it to 0 and tell Pytorch that it now needs to calculate the gradient for this parameter.
        self.final_bias = nn.Parameter(torch.tensor(0.0), requires_grad=True)

        self.learning_rate = 0.01  ## this is for gradient descent. NOTE: we will improve this value later, so, technically
                                   ## this is just a placeholder until then. In other words, we could put any value here
                                   ## because later we will replace it with the improved value.

    def forward(self, input):

        input_to_top_relu = input * self.w00 + self.b00
        top_relu_output = F.relu(input_to_top_relu)
        scaled_top_relu_output = top_relu_output * self.w01

        input_to_bottom_relu = input * self.w10 + self.b10
        bottom_relu_output = F.relu(input_to_bottom_relu)
        scaled_bottom_relu_output = bottom_relu_output * self.w11

        input_to_final_relu = scaled_top_relu_output + scaled_bottom_relu_output + self.final_bias

        output = F.relu(input_to_final_relu)

        return output

    def configure_optimizers(self):  # this configures the optimizer we want to use for backpropagation.
        return SGD(self.parameters(), lr=self.learning_rate)  # NOTE: We set the learning rate (lr) to our new variable
                                                              # self.learning_rate

    def training_step(self, batch, batch_idx):  # take a step during gradient descent.
        input_i, label_i = batch  # collect input
        output_i = self.forward(input_i)  # run input through the neural network
        loss = (output_i - label_i)**2  ## loss = squared residual

        return loss


model = BasicLightningTrain()  # First, make model from the class
output_values = model(input_doses)  # now run different doses through the neural network.

sns.set(style="whitegrid")
sns.lineplot(x=input_doses, y=output_values.detach(), color='green', linewidth=2.5)  # NOTE: detach() because
                                                                                     # final_bias has a gradient
sns.scatterplot(x=inputs, y=labels, color='black', s=80)
plt.ylabel('Effectiveness')
plt.xlabel('Dose')
save("2_untrained_fit.png")

dataset = TensorDataset(inputs, labels)
dataloader = DataLoader(dataset)

model = BasicLightningTrain()  # First, make model from the class

## Now create a Trainer - we can use the trainer to...
##  1) Find the optimal learning rate
##  2) Train (optimize) the weights and biases in the model
## By default, the trainer will be running on your system's CPU
trainer = L.Trainer(max_epochs=34, accelerator="auto", devices="auto")

## Now let's find the optimal learning rate
tuner = L.pytorch.tuner.Tuner(trainer)
lr_find_results = tuner.lr_find(model,
                                train_dataloaders=dataloader,  # the training data
                                min_lr=0.001,  # minimum learning rate
                                max_lr=1.0,  # maximum learning rate
                                early_stop_threshold=None)  # setting this to "None" tests all 100 candidate rates
new_lr = lr_find_results.suggestion()  ## suggestion() returns the best guess for the optimal learning rate

## now print out the learning rate
print(f"lr_find() suggests {new_lr:.5f} for the learning rate.")
steepest_lr = lr_find_results.suggestion(method="steepest")  # ember only: Lightning's rule, for comparison
print(f"Lightning's 'steepest' rule would suggest {steepest_lr:.5f}.")

fig = lr_find_results.plot(suggest=True)
fig.axes[0].set_title(f"lr_find: default suggestion {new_lr:.4g} (red); steepest {steepest_lr:.4g}")
fig.axes[0].axvline(steepest_lr, color="grey", linestyle="--", linewidth=1)
save("3_lr_find.png")

# now set the model's learning rate to the new value
model.learning_rate = new_lr

## Now that we have an improved learning rate, let's train the model to optimize final_bias
trainer.fit(model, train_dataloaders=dataloader)

print(model.final_bias.data)

output_values = model(input_doses)
sns.set(style="whitegrid")
sns.lineplot(x=input_doses, y=output_values.detach(), color='green', linewidth=2.5)
sns.scatterplot(x=inputs, y=labels, color='black', s=80)
plt.ylabel('Effectiveness')
plt.xlabel('Dose')
save("4_trained_fit.png")

print(f"final_bias = {model.final_bias.item():.4f} (least-squares optimum: -16.01)")
print(f"plots written to {os.path.abspath(args.out)}  ({time.perf_counter() - _t0:.1f} s, imports included)")
